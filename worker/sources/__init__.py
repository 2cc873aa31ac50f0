"""Where documents come from: each source feeds batches of raw Estuary documents onward.

``webhook`` (the HTTP route, into the spool), ``kafka`` (Dekaf and materialize-kafka, into the
spool, committing after delivery), ``files`` (``reindex``, straight into prepare → write). The
shared shape is :class:`worker.sources.base.Source`.
"""
