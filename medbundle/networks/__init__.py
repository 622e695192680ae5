"""medbundle.networks."""
