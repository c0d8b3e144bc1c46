"""Fault injection: real servers and agents under kill -9, outages, clock skew and bad state.

Each test injects one fault and checks that nothing is lost, nothing gets
stuck, and what the server shows stays true. Every one is bounded in time.
"""
