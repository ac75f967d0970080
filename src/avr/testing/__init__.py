"""Fakes of the systems avr talks to (Asterisk, STS services, webhook receivers), shipped for tests and benchmarks."""
