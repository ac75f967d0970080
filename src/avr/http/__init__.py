"""avr's HTTP service: JSON helpers, the avr-core routes (/health, /call) and the assembly of all routes."""
