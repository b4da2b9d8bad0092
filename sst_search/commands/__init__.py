"""Command functions of the sst-search CLI, one module per command."""
