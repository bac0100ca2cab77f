"""Operator actions: clear the cache, run a cleanup tier, close streams, drain — on every worker.

* :mod:`app.admin.actions` — each action's request body and what it does on one worker;
* :mod:`app.admin.dispatch` — running it on every worker named and adding up the answers;
* :mod:`app.admin.drain` — the drain state and its admission check;
* :mod:`app.admin.audit` — the log line and counter of every action.

The HTTP door is ``app.api.routes.admin_actions``; the medium between workers
is ``app.fleet.actions``.
"""
