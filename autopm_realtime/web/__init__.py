"""Tornado handlers: one module per wire protocol, plus the HTTP API and the routes that mount them."""
