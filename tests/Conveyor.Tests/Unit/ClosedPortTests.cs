using System.Net;
using System.Net.Sockets;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Unit;

/// <summary>
/// What the tests of an unreachable broker, database or management API rely on from <see cref="ClosedPort"/>: a
/// connection to it is refused, however often it is asked, and no other socket can take the port meanwhile.
/// </summary>
public sealed class ClosedPortTests
{
    [Fact]
    public async Task A_connection_to_the_closed_port_is_refused_every_time()
    {
        Assert.NotEqual(0, ClosedPort.Number);
        for (var attempt = 0; attempt < 3; attempt++)
        {
            using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            var refused = await Assert.ThrowsAsync<SocketException>(
                () => client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, ClosedPort.Number)));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        }
    }

    [Theory]
    [InlineData("127.0.0.1", false)]
    [InlineData("127.0.0.1", true)]
    [InlineData("0.0.0.0", true)]
    public void No_other_socket_can_bind_the_closed_port(string address, bool reuseAddress)
    {
        using var other = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        other.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, reuseAddress);

        var taken = Assert.Throws<SocketException>(() => other.Bind(new IPEndPoint(IPAddress.Parse(address), ClosedPort.Number)));

        Assert.Equal(SocketError.AddressAlreadyInUse, taken.SocketErrorCode);
    }

    [Fact]
    public void A_listener_on_the_closed_port_cannot_start()
    {
        var listener = new TcpListener(IPAddress.Loopback, ClosedPort.Number);

        var taken = Assert.Throws<SocketException>(listener.Start);

        Assert.Equal(SocketError.AddressAlreadyInUse, taken.SocketErrorCode);
    }
}
