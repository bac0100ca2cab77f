"""What goes over the wire, apart from any I/O: the event, its id, its encoding, channel names.

Everything that carries events uses these: the brokers store and replay ``Event`` objects and
number them with event ids, the hub and the stream responses write their frames, the publish
service and the fronts encode events and check channel names (so do the operator actions), and
the Python clients and load tools read streams with the parser. So this package sits below all
of them and imports nothing of Herald's: a module here that needed the hub or a broker would
tie every carrier to every other.
"""
