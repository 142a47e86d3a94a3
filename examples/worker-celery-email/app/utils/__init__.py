"""Small helpers shared by the service's modules."""
