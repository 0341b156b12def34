using System.Net;
using System.Net.Sockets;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A loopback TCP relay in front of a real server that a test can cut (every open connection is
/// reset and new ones are refused, as when the server goes away) and restore on the same port,
/// without disturbing the shared server itself.
/// </summary>
public sealed class OutageProxy : IAsyncDisposable
{
    private readonly IPEndPoint _target;
    private readonly List<TcpClient> _open = [];
    private readonly object _gate = new();
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _acceptLoop;
    private volatile bool _cut;
    private volatile bool _stalled;
    private volatile bool _passCloses;
    private long _latencyTicks;
    private int _refused;
    private int _held;
    private int _roundTrips;

    private OutageProxy(IPEndPoint target)
    {
        _target = target;
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _acceptLoop = Task.Run(AcceptAsync);
    }

    public int Port { get; }

    /// <summary>Connections attempted (and reset) while cut: evidence that the client kept trying.</summary>
    public int Refused => Volatile.Read(ref _refused);

    /// <summary>Reads held back by a <see cref="Stall()"/>: evidence that something was sent into it.</summary>
    public int Held => Volatile.Read(ref _held);

    /// <summary>
    /// Round trips made through the relay, over all its connections: the times a client sent something
    /// after the server last answered it (or first, on a new connection), however many chunks each
    /// request took. A client that writes several statements together before it waits makes one.
    /// </summary>
    public int RoundTrips => Volatile.Read(ref _roundTrips);

    public static async Task<OutageProxy> ToAsync(string host, int port)
    {
        var addresses = await Dns.GetHostAddressesAsync(host);
        return new OutageProxy(new IPEndPoint(addresses.First(a => a.AddressFamily == AddressFamily.InterNetwork), port));
    }

    /// <summary>Resets every relayed connection, and resets new ones at once, until <see cref="Restore"/>.</summary>
    public void Cut()
    {
        _cut = true;
        List<TcpClient> open;
        lock (_gate)
        {
            open = [.. _open];
            _open.Clear();
        }

        foreach (var client in open)
        {
            Reset(client);
        }
    }

    public void Restore() => _cut = false;

    /// <summary>
    /// Relayed connections stay open but no byte moves either way until <see cref="Resume"/>: a server
    /// that stops answering without closing anything, as a broker blocking its publishers does.
    /// </summary>
    public void Stall() => Stall(passCloses: false);

    /// <summary>As <see cref="Stall()"/>, but a side that closes its connection meanwhile ends the relayed connection at
    /// once, so the other side sees it closed (a client giving its session up, which the server then ends), rather than
    /// when the stall ends.</summary>
    public void Stall(bool passCloses)
    {
        _passCloses = passCloses;
        _stalled = true;
    }

    public void Resume() => _stalled = false;

    /// <summary>
    /// How long each relayed chunk waits, either way, before it is passed on: a server that answers every
    /// request, but slowly. Zero (the default) passes bytes on at once.
    /// </summary>
    public TimeSpan Latency
    {
        get => TimeSpan.FromTicks(Volatile.Read(ref _latencyTicks));
        set => Volatile.Write(ref _latencyTicks, value.Ticks);
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync();
        _listener.Stop();
        await _acceptLoop;
        Cut();
        _stopping.Dispose();
    }

    private static void Reset(TcpClient client)
    {
        try
        {
            // Null once the relay has closed it.
            if (client.Client is { } socket)
            {
                socket.LingerState = new LingerOption(true, 0);
            }
        }
        catch (Exception exception) when (exception is SocketException or ObjectDisposedException)
        {
            // Already closed.
        }

        client.Dispose();
    }

    private async Task AcceptAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            TcpClient inbound;
            try
            {
                inbound = await _listener.AcceptTcpClientAsync(_stopping.Token);
            }
            catch (Exception exception) when (exception is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            if (_cut)
            {
                Interlocked.Increment(ref _refused);
                Reset(inbound);
                continue;
            }

            var outbound = new TcpClient();
            try
            {
                await outbound.ConnectAsync(_target, _stopping.Token);
            }
            catch (Exception exception) when (exception is OperationCanceledException or SocketException)
            {
                Reset(inbound);
                outbound.Dispose();
                continue;
            }

            // Checked again under the lock Cut takes: a connection whose upstream connect was under way
            // when Cut ran would otherwise survive the cut.
            bool cutMeanwhile;
            lock (_gate)
            {
                cutMeanwhile = _cut;
                if (!cutMeanwhile)
                {
                    _open.Add(inbound);
                    _open.Add(outbound);
                }
            }

            if (cutMeanwhile)
            {
                Interlocked.Increment(ref _refused);
                Reset(inbound);
                Reset(outbound);
                continue;
            }

            _ = RelayAsync(inbound, outbound);
        }
    }

    /// <summary>
    /// Copies until the source closes; bytes read while stalled are held until the stall ends. The
    /// <paramref name="turn"/> is shared by a connection's two pumps: a read from the client while the
    /// server spoke last starts a round trip.
    /// </summary>
    private async Task PumpAsync(NetworkStream from, NetworkStream to, Turn turn, bool fromClient)
    {
        var buffer = new byte[16 * 1024];
        int read;
        while ((read = await from.ReadAsync(buffer, _stopping.Token)) > 0)
        {
            // Before the bytes are passed on: the client can send its next request only once the answer
            // it waits for has been written to it, so that request always finds the server's turn recorded.
            if (turn.Pass(fromClient))
            {
                Interlocked.Increment(ref _roundTrips);
            }

            if (_stalled)
            {
                Interlocked.Increment(ref _held);
            }

            while (_stalled)
            {
                if (_passCloses && ClosedByPeer(from.Socket))
                {
                    return;
                }

                await Task.Delay(20, _stopping.Token);
            }

            if (Latency is { Ticks: > 0 } latency)
            {
                await Task.Delay(latency, _stopping.Token);
            }

            await to.WriteAsync(buffer.AsMemory(0, read), _stopping.Token);
        }
    }

    /// <summary>Readable with nothing to read: the peer closed (or reset) its side.</summary>
    private static bool ClosedByPeer(Socket socket) => socket.Poll(0, SelectMode.SelectRead) && socket.Available == 0;

    private async Task RelayAsync(TcpClient inbound, TcpClient outbound)
    {
        try
        {
            var turn = new Turn();
            var upstream = PumpAsync(inbound.GetStream(), outbound.GetStream(), turn, fromClient: true);
            var downstream = PumpAsync(outbound.GetStream(), inbound.GetStream(), turn, fromClient: false);
            await Task.WhenAny(upstream, downstream);
        }
        catch (Exception exception) when (exception is IOException or SocketException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
        {
            // Cut, or one side closed.
        }
        finally
        {
            lock (_gate)
            {
                _open.Remove(inbound);
                _open.Remove(outbound);
            }

            inbound.Dispose();
            outbound.Dispose();
        }
    }

    /// <summary>Which side of one relayed connection spoke last.</summary>
    private sealed class Turn
    {
        private int _clientSpokeLast;

        /// <summary>Records who speaks now; true when the client speaks after the server (or first).</summary>
        public bool Pass(bool fromClient) => Interlocked.Exchange(ref _clientSpokeLast, fromClient ? 1 : 0) == 0 && fromClient;
    }
}
