"""SCSI transports (Linux ``drivers/scsi/``): the iSCSI initiator over the agent's TCP."""
