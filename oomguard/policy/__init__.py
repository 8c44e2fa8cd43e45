"""Pure decisions: no file, clock, process or logging. Time is a ``now`` passed in.

* ``restart``: the per-service lifecycle state machine (``decide``, ``next_deadline``).
* ``ranking``: who restarts / is evicted first.
* ``pressure``: the graduated response to memory pressure per budget (``evaluate``,
  ``next_sample_at``).

The supervisor feeds events and samples in and carries out the actions that come back; that is
why this package can be tested exhaustively, with no sleeps. Import the submodules directly;
importing this package imports nothing.
"""
