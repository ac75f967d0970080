"""Programs that work with avr, to read and copy: see the README of each."""
