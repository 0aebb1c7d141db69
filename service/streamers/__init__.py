"""Streamers: the packed batches go from Ray nodes straight to the trainers.

With `navit serve --streamers N` (ServiceSettings.streamers) the service process stays
the job's coordinator (config history and planned frontier, reject ledger, rank cursors,
live stats, control plane, token) and sends no batch: N streamers, Ray actors spread
over the cluster's nodes, each plan, fill and send the batches of their ranks over a
Flight server of their own. A trainer finds its rank's streamer through Flight's own
discovery: `get_flight_info` on the coordinator with its ticket as a command answers an
endpoint holding the ticket and the streamer's location.

- `wire`: what coordinator and streamers say to each other (Flight actions, JSON);
- `coordinator`: the service's side, answering those actions;
- `client`, `reporter`, `forwarding`: a streamer's calls, its queue of events, and its
  rank streams' events turned into them;
- `planning`: a streamer's planners, which reserve every window with the coordinator;
- `streamer`: one streamer's Flight server, streams and source;
- `pool`: the Ray actors, started, watched and stopped.

docs/DESIGN.md ("Streamers") says why the coordinator owns the planned frontier.
"""
