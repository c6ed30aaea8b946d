"""How a plan reaches the apps. Today: env vars in the pod template (`env`)."""
