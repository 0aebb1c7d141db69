"""`navit pretrain DATASET`: the whole pretrain job on one machine, in one command.

    navit pretrain data/sample --trainers 2 --steps 300 --set seq_len=256 --set max_res=128

It starts the packer service (`navit serve`: embedded local Ray, control plane, Flight)
and N trainer ranks (`navit train --source grpc://127.0.0.1:PORT --rank r --world-size
N`; DDP over gloo on CPU when N > 1) as child processes, shows one progress line (step,
loss, images/s, packing efficiency) from the trainers' metrics.jsonl and the service's
/stats, and on the end, on Ctrl-C or on SIGTERM stops every process it started.

Why child processes rather than the service in this process: the service runs the very
command the cluster's `packer` container runs, and each child in a session of its own
can be stopped in order and swept for leftovers (processes.py says how).

A trainer that dies (killed, out of memory) is restarted together with the other ranks
(DDP ranks cannot continue without it) from the last checkpoint with `--resume`, up to
`--max-restarts` times; it continues from its checkpoint's data cursor, so no batch is
lost or repeated.

The run directory (`--run-dir`, default runs/pretrain) keeps:
- `metrics.jsonl`, `checkpoint.pt`: the trainer's (rank 0's) per-step metrics and its
  checkpoint (model, optimizer, data cursor);
- `stats.json`: the service's GET /stats at the end; `stats.jsonl`: /stats samples over
  the run (efficiency, images/s, config version);
- `val/`: the held-out validation split (`--val-fraction`, `--val-seed`; packer.plan.split),
  packed once at the packing config's max_res; the service never streams these images,
  the trainers score them every `--eval-every` steps ("eval": true lines in
  metrics.jsonl, "val acc" on the progress line);
- `pretrain.png`: training and validation loss and accuracy, packing efficiency;
- `events.jsonl`: what the supervisor did (starts, exits, restarts) with process ids;
- `service-ready.json`: the service's ready file while it serves (deploy/ready_file.py);
- `state/`: the service's config history and rank cursors (a PATCH survives `--resume`);
- `logs/service.log`, `logs/trainer-R.log`: the children's output.

Modules: options (PretrainOptions), run_dir (the files above), processes (Child),
service_child (the service's start and readiness), trainer_ranks (the ranks' starts and
stops), watch and progress (metrics, /stats samples, the progress line), control_plane
(the HTTP client of the service), validation (the held-out split), plot, and
supervisor (Pretrain, which runs them in order).
"""
