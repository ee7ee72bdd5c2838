"""clipguard's moderation library: models, decode, policies, scoring. No Kafka in here."""

__version__ = "0.1.0"
