using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Conveyor.Api.Security;

/// <summary>
/// The client address that failed authentication is counted against: the connection's remote address
/// (the Api honours no forwarded header, see ADR 0003 decision 9). IPv4 addresses count one by one; IPv6
/// addresses by their /64 prefix, since one host is usually given a whole /64 and can pick any address in it.
/// </summary>
internal static class ClientAddresses
{
    /// <summary>A 128-bit key (IPv4 as its IPv4-mapped IPv6 form); no allocation. Unknown (no socket): zero.</summary>
    public static UInt128 Key(IPAddress? address)
    {
        if (address is null)
        {
            return UInt128.Zero;
        }

        Span<byte> bytes = stackalloc byte[16];
        if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            bytes[10] = 0xff;
            bytes[11] = 0xff;
            address.TryWriteBytes(bytes[12..], out _);
        }
        else
        {
            address.TryWriteBytes(bytes, out _);
            if (!address.IsIPv4MappedToIPv6)
            {
                bytes[8..].Clear();
            }
        }

        return BinaryPrimitives.ReadUInt128BigEndian(bytes);
    }

    /// <summary>How a key is shown in a log: the address, or the IPv6 prefix as <c>2001:db8::/64</c>.</summary>
    public static string Describe(UInt128 key)
    {
        if (key == UInt128.Zero)
        {
            return "(unknown)";
        }

        Span<byte> bytes = stackalloc byte[16];
        BinaryPrimitives.WriteUInt128BigEndian(bytes, key);
        var address = new IPAddress(bytes);
        return address.IsIPv4MappedToIPv6 ? address.MapToIPv4().ToString() : address + "/64";
    }
}
