"""Observation and goal encoders that turn inputs into transformer tokens."""
