namespace Conveyor.Worker.Webhooks;

/// <summary>
/// A webhook connection's plaintext stream (after TLS), which shows each answer's start to the
/// <see cref="AnswerStart"/> of the request it answers. HTTP/1.1 sends one request at a time on a
/// connection, and the answer to a request comes after it: so the request written last owns the bytes
/// read next. Every byte passes through unchanged.
/// </summary>
public sealed class AnswerStartStream(Stream inner) : Stream
{
    private AnswerStart? _answer;

    public override bool CanRead => inner.CanRead;

    public override bool CanWrite => inner.CanWrite;

    public override bool CanSeek => false;

    public override bool CanTimeout => inner.CanTimeout;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        var read = inner.Read(buffer);
        Volatile.Read(ref _answer)?.Observe(this, buffer[..read]);
        return read;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var read = await inner.ReadAsync(buffer, cancellationToken);
        Volatile.Read(ref _answer)?.Observe(this, buffer.Span[..read]);
        return read;
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        Sending();
        inner.Write(buffer);
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Sending();
        return inner.WriteAsync(buffer, cancellationToken);
    }

    public override void Flush() => inner.Flush();

    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        await inner.DisposeAsync();
        await base.DisposeAsync();
    }

    /// <summary>
    /// A request is being written, in its sender's flow: what is read from now on answers it. A request
    /// without an <see cref="AnswerStart"/> leaves none, so no earlier request's answer takes its bytes.
    /// </summary>
    private void Sending()
    {
        var answer = AnswerStart.ForRequestBeingWritten;
        answer?.WrittenOn(this);
        Volatile.Write(ref _answer, answer);
    }
}
