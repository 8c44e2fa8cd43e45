"""cgroup"""
