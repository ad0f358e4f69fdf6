"""Pruning methods: one file each; `conf/method/<name>.yaml` is the registry (`_target_`)."""
