"""Kafka applications and the command line, built on :mod:`pipeline`."""
