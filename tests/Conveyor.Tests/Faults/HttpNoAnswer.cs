using System.Net.Sockets;

namespace Conveyor.Tests.Faults;

/// <summary>
/// An HTTP request that got no answer because the process on the other end is not there (being
/// killed, or not listening yet). HttpClient wraps most such failures in HttpRequestException, but
/// not all: a connection whose peer died between connect and its first read can surface as a bare
/// SocketException (from reading the socket's remote end point) or IOException.
/// </summary>
internal static class HttpNoAnswer
{
    public static bool Is(Exception exception) =>
        exception is HttpRequestException or TaskCanceledException or SocketException or IOException;
}
