"""The synthetic kit: what tests, the demo and the benchmarks stand in for DESED and YouTube with, in one place.

- dataset.py: a DESED-shaped data set (metadata and audio folders as published, YouTube-style names, videos
  that show the events, still images, black screens, vanished videos) and its truth files;
- failures.py: the failure cases such a set can hold (missing, truncated, unreadable files; refusals of the host);
- video_host.py: the loopback video host on 127.0.0.1 that serves the videos as YouTube would (refusals,
  stalls, truncation, throttling), and loopback_youtube.py, yt-dlp's extractor for its YouTube-shaped watch
  URLs (named in `DownloadConfig.extractors`);
- stores.py: small synthetic feature stores built without extraction, for training tests;
- frame_probs.py: synthetic frame probabilities and labels, for evaluation tests;
- field_libraries.py: the same metrics computed by the field's libraries (sed_eval, sed_scores_eval,
  psds_eval), to check ours against.

No stage imports it (tests/test_import_graph.py): a stage that needs something from it takes it as data or
configuration (a URL template, an extractor's name, a truth file).
"""
