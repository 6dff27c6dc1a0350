"""The TCP shell face: a one-shot token on its own port, then a PTY inside the sandbox.

``tickets`` (core-side bookkeeping of tokens and ports) lives in bolt.shells; this package holds what
speaks the protocol: the telnet codec, the connection protocol and the listeners.
"""
