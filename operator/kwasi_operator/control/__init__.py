"""The controller: per-object state (``state``), the work queue (``workqueue``), one reconcile
(``reconcile``, with ``problems`` for what blocks a spec), status publishing (``publish``) and the
level-based resync (``resync``). kopf's handlers (``kwasi_operator.handlers``) feed it."""
