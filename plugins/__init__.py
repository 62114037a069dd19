"""Built-in plugins; each registers through the `sdmark` entry-point group like a third-party one."""
