"""What the stages share, in layers: the flat plumbing modules (params, paths, io, errors,
cli, tracking), then ``pretrained``, ``data``, ``validation``, ``modeling``, ``evaluation``,
``registration`` and ``reports``. A module imports only its own layer and those before it;
nothing here imports a stage."""
