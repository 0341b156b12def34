using System.Net;
using System.Net.Sockets;

namespace Conveyor.Tests.Fakes;

/// <summary>
/// A loopback port that never answers a connect: its listener accepts nothing and its backlog is full,
/// so the kernel drops every new SYN, as a firewall that drops packets, a network partition or a
/// remote whose accept queue is full does. A connect to it runs until its caller gives up.
/// </summary>
public sealed class BlackholedListener : IDisposable
{
    private readonly Socket _listener;
    private readonly List<Socket> _queued = [];

    private BlackholedListener(Socket listener) => _listener = listener;

    public Uri BaseAddress => new($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndPoint!).Port}/");

    public static async Task<BlackholedListener> StartAsync()
    {
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(0);
        var blackholed = new BlackholedListener(listener);
        // Connections the listener never accepts fill its backlog; the first connect that does not
        // complete shows it full (Linux queues one connection for a backlog of 0).
        for (var i = 0; i < 16; i++)
        {
            var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            using var probe = new CancellationTokenSource(TimeSpan.FromMilliseconds(500));
            try
            {
                await client.ConnectAsync(listener.LocalEndPoint!, probe.Token);
                blackholed._queued.Add(client);
            }
            catch (OperationCanceledException)
            {
                client.Dispose();
                return blackholed;
            }
        }

        blackholed.Dispose();
        throw new InvalidOperationException("The listener's backlog never filled: connects to it would be answered.");
    }

    public void Dispose()
    {
        foreach (var socket in _queued)
        {
            socket.Dispose();
        }

        _listener.Dispose();
    }
}
