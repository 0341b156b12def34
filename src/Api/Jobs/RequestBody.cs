using System.Buffers;

namespace Conveyor.Api.Jobs;

/// <summary>Reads a request body into memory, refusing to buffer more than a limit.</summary>
internal static class RequestBody
{
    /// <summary>
    /// The body, or null when it is longer than <paramref name="limit"/> bytes. Reads at most
    /// <paramref name="limit"/> + 1 bytes, so a chunked body without Content-Length is caught too.
    /// </summary>
    public static async Task<byte[]?> ReadAtMostAsync(Stream body, int limit, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        var chunk = ArrayPool<byte>.Shared.Rent(16 * 1024);
        try
        {
            while (true)
            {
                var wanted = (int)Math.Min(chunk.Length, limit + 1L - buffer.Length);
                var read = await body.ReadAsync(chunk.AsMemory(0, wanted), cancellationToken);
                if (read == 0)
                {
                    return buffer.ToArray();
                }

                buffer.Write(chunk, 0, read);
                if (buffer.Length > limit)
                {
                    return null;
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
        }
    }
}
