"""Historical backfill: readings from files into the input topic, as envelopes. No Faust.

``faust -A app load FILE ...`` (app/commands/load.py) is the command; this package does
the work, so that it can be tested without a worker. Its modules, each importing only
those above it:

* ``errors``: ``LoadError`` (a problem the operator must fix) and ``ProduceError``;
* ``lines``: plain or gzip content read block by block into lines (memory stays
  constant whatever the size), and the ``Position`` a checkpoint resumes at;
* ``mapping``: which CSV column feeds which field (``--map`` or the header's default);
* ``formats``: the Intel Lab text format and CSV, each line one reading of the
  contract's wide shape or a ``Skip`` reason; format detection;
* ``envelopes``: readings grouped per input partition in file order, as envelopes,
  in chunks;
* ``checkpoint``: the file's fingerprint, the checkpoint file, and ``AckedPrefix`` (the
  line up to which every message was acknowledged);
* ``plan``: every argument checked before anything is produced;
* ``summary``: what a load reports at its end;
* ``run``: ``FileLoad`` (one file into the topic) and ``run`` (every file, signals, exit
  status).

Nothing is re-exported here: import from the module that defines a name.
"""
