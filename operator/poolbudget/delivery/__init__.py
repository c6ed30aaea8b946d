"""How an allotment reaches the app. Today: env vars in the pod template (`env`), restored exactly on release."""
