using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A loopback port that refuses connections for as long as the test process runs: the port of a socket this process
/// binds once and holds, never listening on it. On Linux a connection to a bound port nobody listens on is refused,
/// like one to a free port. A port found free and released, as before, could be taken meanwhile (by another test's
/// listener, or as an outgoing connection's local port, in this process or another on the shared machine), and the
/// test then talked to whatever had taken it instead of being refused.
/// </summary>
/// <remarks>
/// The socket is bound with libc's bind, not <see cref="Socket.Bind"/>: .NET sets SO_REUSEADDR on every TCP socket just
/// before binding it on Linux, and two such sockets may share a port while neither listens, so a .NET listener (Kestrel,
/// <see cref="TcpListener"/>) asking for the port by number would have been given it too. Without SO_REUSEADDR (or
/// SO_REUSEPORT) on the held socket, no other socket can bind the port.
/// </remarks>
public static class ClosedPort
{
    private const short InterNetwork = 2;

    // Held for the life of the process on purpose: never disposed, so the port stays taken for every test that uses it.
    private static readonly (Socket Socket, int Port) Held = Hold();

    /// <summary>The held port's number.</summary>
    public static int Number => Held.Port;

    private static (Socket, int) Hold()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var fd = socket.SafeHandle.DangerousGetHandle();
        // struct sockaddr_in: family (host order), port (network order; 0 lets the kernel pick), address, padding.
        var address = new byte[16];
        BinaryPrimitives.WriteInt16LittleEndian(address, InterNetwork);
        IPAddress.Loopback.GetAddressBytes().CopyTo(address, 4);
        if (Bind(fd, address, address.Length) != 0)
        {
            throw new SocketException(Marshal.GetLastPInvokeError());
        }

        var length = address.Length;
        if (GetSockName(fd, address, ref length) != 0)
        {
            throw new SocketException(Marshal.GetLastPInvokeError());
        }

        return (socket, BinaryPrimitives.ReadUInt16BigEndian(address.AsSpan(2)));
    }

    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    [DllImport("libc", EntryPoint = "bind", SetLastError = true)]
    private static extern int Bind(nint socket, byte[] address, int length);

    [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
    [DllImport("libc", EntryPoint = "getsockname", SetLastError = true)]
    private static extern int GetSockName(nint socket, byte[] address, ref int length);
}
