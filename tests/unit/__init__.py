"""Fast tests of memwatch's core: no cluster, no cgroups, seconds on any machine."""
