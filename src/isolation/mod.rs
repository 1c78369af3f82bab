//! Process isolation: a device's session in a child process the agent can kill (being written).
