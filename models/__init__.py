"""Market and player models: device blocks and one module per market."""
