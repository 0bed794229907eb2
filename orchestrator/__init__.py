"""orchestrate: render, provision, deploy and heal a Rust service on a fleet."""

from __future__ import annotations

__version__ = "0.1.0"
