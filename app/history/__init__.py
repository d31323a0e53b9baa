"""The history API's logic without Faust: parameters, PostgreSQL and lake reads, the
merge of the two stores, and the encoders of exports (``web/history.py``,
``web/export.py`` and ``web/analytics.py`` serve them)."""
