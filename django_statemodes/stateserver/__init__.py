"""The state server (ASP.NET's aspnet_state.exe): a sans-IO protocol, an asyncio daemon, a client."""

from __future__ import annotations
