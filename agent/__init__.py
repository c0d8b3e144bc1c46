"""The Plumb agent: enroll, keep a session, run the catalog, spool reports."""

AGENT_VERSION = "0.1.0"
