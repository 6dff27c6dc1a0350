"""Host adapters: one small class per Linux mechanism, each over an injected process runner.

Adapters never import the core (bolt.manager) or the faces (bolt.api, bolt.shell).
"""
