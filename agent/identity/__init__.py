"""Our Status identity at the edge of the pure core: what the home records about it and how people see it.

One module per audience; the pure derivations and formats they share live in :mod:`agent.core.identity`.

* :mod:`agent.identity.record`: the ``"status"`` object of ``HOME/config.json`` (key UID, its origin).
* :mod:`agent.identity.whoami`: the ``whoami`` document and its text, for the CLI (and the contact-code fields
  the daemon's identity answer carries).
* :mod:`agent.identity.peer_key`: a peer key sent to the socket as text, for the daemon's request parsing.
* :mod:`agent.identity.phrase_input` / :mod:`agent.identity.phrase_import`: reading a recovery phrase from a
  person and provisioning the home with the key it derives (``keyagent init --from-phrase``).
"""
