"""marseval: reproduce Mars-Bench and MarsRetrieval end to end, and run new models through them."""

__version__ = "0.1.0"
