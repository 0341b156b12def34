using System.Buffers;

namespace Conveyor.Api.Jobs;

/// <summary>Reads a request body into memory, refusing to buffer more than a limit.</summary>
internal static class RequestBody
{
    /// <summary>
    /// The body, or null when it is longer than <paramref name="limit"/> bytes. Reads at most
    /// <paramref name="limit"/> + 1 bytes, so a chunked body without Content-Length is caught too.
    /// </summary>
    public static Task<byte[]?> ReadAtMostAsync(Stream body, int limit, CancellationToken cancellationToken) =>
        ReadAtMostAsync(body, declaredLength: null, limit, cancellationToken);

    /// <summary>
    /// As <see cref="ReadAtMostAsync(Stream, int, CancellationToken)"/>; a body whose length is declared
    /// (Content-Length, which the server enforces) and within the limit is read straight into an array
    /// of that size, without an intermediate buffer.
    /// </summary>
    public static async Task<byte[]?> ReadAtMostAsync(Stream body, long? declaredLength, int limit, CancellationToken cancellationToken)
    {
        if (declaredLength is { } length && length >= 0 && length <= limit)
        {
            return await ReadDeclaredAsync(body, (int)length, cancellationToken);
        }

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

    private static async Task<byte[]> ReadDeclaredAsync(Stream body, int length, CancellationToken cancellationToken)
    {
        var bytes = new byte[length];
        var filled = 0;
        while (filled < length)
        {
            var read = await body.ReadAsync(bytes.AsMemory(filled), cancellationToken);
            if (read == 0)
            {
                // Ended early: what arrived, as the buffered path would answer.
                return bytes[..filled];
            }

            filled += read;
        }

        return bytes;
    }
}
