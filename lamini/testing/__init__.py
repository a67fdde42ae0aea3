"""Test helpers shipped with the package: tiny models, fake servers (no network, no hub)."""
