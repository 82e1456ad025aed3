"""Device drivers of the agent's host: storage devices that swap and writeback use."""
