"""Shipped case files (cases/*.yaml), studies (studies/*.yaml) and small profiles."""
