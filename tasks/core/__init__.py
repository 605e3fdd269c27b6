"""What the stages share: typed params, data sources, model and batching plumbing, the
training pieces, tracking, progress, atomic writes. Stages import from here; nothing here
imports a stage."""
