using System.Net;
using System.Net.Sockets;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// Which destinations count as internal. A webhook URL comes from whoever submits the job: the Api
/// refuses an internal one at submission when it can tell (an address literal, a localhost name) and
/// the worker refuses every one at connect time, on the addresses the host resolved to.
/// </summary>
public static class NetworkAddresses
{
    /// <summary>
    /// False for loopback, private, shared (carrier-grade NAT), link-local (cloud metadata), unique
    /// local, multicast, documentation, benchmarking, reserved and unspecified addresses, in IPv4,
    /// IPv6 and IPv4 embedded in IPv6 alike.
    /// </summary>
    public static bool IsPublic(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            var b = address.GetAddressBytes();
            return !(b[0] is 0 or 10 or 127 or >= 224
                || (b[0] == 100 && b[1] >= 64 && b[1] <= 127)
                || (b[0] == 169 && b[1] == 254)
                || (b[0] == 172 && b[1] >= 16 && b[1] <= 31)
                || (b[0] == 192 && b[1] == 0 && b[2] is 0 or 2)
                || (b[0] == 192 && b[1] == 168)
                || (b[0] == 198 && b[1] is 18 or 19)
                || (b[0] == 198 && b[1] == 51 && b[2] == 100)
                || (b[0] == 203 && b[1] == 0 && b[2] == 113));
        }

        if (address.AddressFamily != AddressFamily.InterNetworkV6)
        {
            return false;
        }

        var v6 = address.GetAddressBytes();
        // NAT64 (64:ff9b::/96) carries an IPv4 address in its last four bytes: judged by that one.
        if (v6[0] == 0x00 && v6[1] == 0x64 && v6[2] == 0xff && v6[3] == 0x9b && v6.AsSpan(4, 8).IndexOfAnyExcept((byte)0) < 0)
        {
            return IsPublic(new IPAddress(v6.AsSpan(12, 4)));
        }

        return !(IPAddress.IsLoopback(address)
            || address.Equals(IPAddress.IPv6None)
            || v6.AsSpan(0, 12).IndexOfAnyExcept((byte)0) < 0 // :: and the deprecated IPv4-compatible ::a.b.c.d
            || address.IsIPv6LinkLocal
            || address.IsIPv6SiteLocal
            || address.IsIPv6Multicast
            || (v6[0] & 0xfe) == 0xfc // fc00::/7, unique local
            || (v6[0] == 0x20 && v6[1] == 0x01 && v6[2] == 0x0d && v6[3] == 0xb8)); // 2001:db8::/32, documentation
    }

    /// <summary>
    /// <c>localhost</c> and names under <c>.localhost</c> (RFC 6761): they resolve to loopback, on
    /// the worker's own machine, whatever DNS says.
    /// </summary>
    public static bool IsLocalHostName(string host)
    {
        var name = host.TrimEnd('.');
        return name.Equals("localhost", StringComparison.OrdinalIgnoreCase)
            || name.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase);
    }
}
