"""The networks, their losses and the weights files that carry them."""
