"""avr: Asterisk calls to AI voice agents, on Twisted."""

__version__ = "0.1.0"
