"""medbundle.viz."""
